"""`python -m lr_train prepare` (scaffold)."""


def add_parser(sub):
    p = sub.add_parser("prepare", help="(not yet implemented)")
    p.set_defaults(func=lambda args: print("not yet implemented") or 1)
    return p
