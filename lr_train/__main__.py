"""``python -m lr_train {prepare,analyze,demo,...}``."""

from lr_train.cli import main

if __name__ == "__main__":
    main()
