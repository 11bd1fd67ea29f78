"""``python -m analysis ROUTING|GRADIENTS --experiment EXP --out DIR``.

Authors
 * speechbrain-moe contributors 2026
"""

from analysis.cli import main

if __name__ == "__main__":
    main()
