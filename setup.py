"""The one thing pyproject.toml cannot declare with setuptools>=69: the C extensions, the tree walk
(consumers/_treewalk.c), the rows of the prediction encoder (consumers/_rows.c) and the numeric columns of
a batch's events (shared/_batch.c).

No -ffast-math and no fused multiply-adds (-ffp-contract=off): its sums must be scikit-learn's bit for bit.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "consumers._treewalk",
            ["consumers/_treewalk.c"],
            extra_compile_args=["-O3", "-ffp-contract=off", "-fno-fast-math"],
        ),
        Extension("consumers._rows", ["consumers/_rows.c"], extra_compile_args=["-O3"]),
        Extension("shared._batch", ["shared/_batch.c"], extra_compile_args=["-O3"]),
    ]
)
