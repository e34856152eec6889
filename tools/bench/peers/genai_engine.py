"""Worker: onnxruntime-genai's own C++ generator (og.Generator), greedy. Runs in the genai venv.

The model folder is what its model builder wrote; the thread count goes in through
a config overlay (session options), as editing genai_config.json would. min_length
= prompt + new tokens, so EOS cannot end a row early.
"""

import protocol  # first: it moves stdout out of the protocol's way

DISTS = ("onnxruntime-genai", "onnxruntime", "numpy")


def load(args):
    import json
    import time

    import numpy as np
    import onnxruntime_genai as og

    config = og.Config(args.model)
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {
        "intra_op_num_threads": args.threads, "inter_op_num_threads": 1}}}}))
    model = og.Model(config)
    og.Tokenizer(model)  # loaded as an application would, so cold starts compare like for like

    def generate(prompt, batch, new_tokens, ready):
        params = og.GeneratorParams(model)
        total = len(prompt) + new_tokens
        params.set_search_options(do_sample=False, batch_size=batch, max_length=total,
                                  min_length=total)
        generator = og.Generator(model, params)
        generator.append_tokens(np.array([prompt] * batch, dtype=np.int32))
        while not generator.is_done():
            generator.generate_next_token()
            ready.append(time.perf_counter())
        return [list(generator.get_sequence(i)[len(prompt):]) for i in range(batch)]

    return generate


if __name__ == "__main__":
    args = protocol.parser(__doc__).parse_args()
    protocol.run(args, lambda: load(args), DISTS)
