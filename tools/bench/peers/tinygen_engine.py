"""Worker: the tinygen runtime (TextGenerator), greedy, EOS ignored. Runs in the tinygen venv.

The loop is `TextGenerator.generate`'s own (a BatchDecoding stepped without text until
done), written out so that the time each token is ready can be noted.
"""

import protocol  # first: it moves stdout out of the protocol's way

DISTS = ("tinygen", "onnxruntime", "numpy", "tokenizers")


def load(args):
    import time

    from tinygen import TextGenerator

    gen = TextGenerator(args.model, device="cpu", threads=args.threads)

    def generate(prompt, batch, new_tokens, ready):
        config = gen.defaults.merged(do_sample=False, max_new_tokens=new_tokens,
                                     stop_at_eos=False)
        [ids] = gen.prompts.encode(prompt)  # checked as generate checks it (ids in the vocabulary)
        decoding = gen._decoding([ids] * batch, [None] * batch, config)
        while not decoding.done:
            decoding.step(show=False)
            ready.append(time.perf_counter())
        return [list(c.token_ids) for c in decoding.completions()]

    return generate


if __name__ == "__main__":
    args = protocol.parser(__doc__).parse_args()
    protocol.run(args, lambda: load(args), DISTS)
