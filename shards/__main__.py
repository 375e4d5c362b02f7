"""`python -m shards`: the echo app under the supervisor (see shards/testapp.py)."""

from shards.testapp import main

if __name__ == "__main__":
    main()
