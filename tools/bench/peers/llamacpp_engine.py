"""Worker: llama.cpp through llama-cpp-python (`Llama.generate`, greedy, batch 1); llamacpp venv.

--model is a GGUF file. `Llama.generate` reuses the KV cache of a prompt that
starts like the last one; `reset()` first makes every call prefill its whole
prompt, as the other engines do. EOS does not stop `generate`; we take exactly
the tokens asked for.
"""

import protocol  # first: it moves stdout out of the protocol's way

DISTS = ("llama_cpp_python", "numpy")


def load(args):
    import time

    from llama_cpp import Llama

    llm = Llama(model_path=args.model, n_ctx=args.n_ctx, n_batch=512, n_threads=args.threads,
                n_threads_batch=args.threads, verbose=False)

    def generate(prompt, batch, new_tokens, ready):
        if batch != 1:
            raise ValueError("llama-cpp-python decodes one sequence at a time")
        llm.reset()
        out = []
        for token in llm.generate(prompt, top_k=1, top_p=1.0, min_p=0.0, temp=0.0,
                                  repeat_penalty=1.0, reset=True):
            out.append(token)
            ready.append(time.perf_counter())
            if len(out) == new_tokens:
                break
        return [out]

    return generate


if __name__ == "__main__":
    p = protocol.parser(__doc__)
    p.add_argument("--n-ctx", type=int, default=2048, help="context the KV cache is sized for")
    args = p.parse_args()
    protocol.run(args, lambda: load(args), DISTS)
