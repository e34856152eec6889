"""Worker: the tinygen runtime (TextGenerator), greedy, EOS ignored. Runs in the tinygen venv."""

import protocol  # first: it moves stdout out of the protocol's way

DISTS = ("tinygen", "onnxruntime", "numpy", "tokenizers")


def load(args):
    from tinygen import TextGenerator

    gen = TextGenerator(args.model, device="cpu", threads=args.threads)

    def generate(prompt, batch, new_tokens):
        out = gen.generate(prompt, n=batch, batch_size=batch, do_sample=False,
                           max_new_tokens=new_tokens, stop_at_eos=False)
        return [list(c.token_ids) for c in out]

    return generate


if __name__ == "__main__":
    args = protocol.parser(__doc__).parse_args()
    protocol.run(args, lambda: load(args), DISTS)
