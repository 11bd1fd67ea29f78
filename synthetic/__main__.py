"""``python -m synthetic KIND OUT_DIR``: writes built-in data or a
tiny model.

Authors
 * speechbrain-moe contributors 2026
"""

import argparse

from synthetic import GENERATORS, generate


def main(argv=None):
    """Parses the command line and runs the generator.

    Arguments
    ---------
    argv : list of str, optional
        Command-line arguments (default: ``sys.argv``).
    """
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("kind", choices=sorted(GENERATORS))
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(generate(args.kind, args.out_dir, seed=args.seed))


if __name__ == "__main__":
    main()
