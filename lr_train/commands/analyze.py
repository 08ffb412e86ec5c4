"""`python -m lr_train analyze` (scaffold)."""


def add_parser(sub):
    p = sub.add_parser("analyze", help="(not yet implemented)")
    p.set_defaults(func=lambda args: print("not yet implemented") or 1)
    return p
