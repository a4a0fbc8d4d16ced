"""A helper module beside the DAG files: no DAG here."""


def double(x):
    return 2 * x
