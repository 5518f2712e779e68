"""The native half of the framer (mmgate/smtp/_text.c). Optional: where
no C compiler or Python headers are found, mmgate installs without it and
mmgate/smtp/framing.py frames in Python (the same results, slower)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "mmgate.smtp._text",
            ["mmgate/smtp/_text.c"],
            extra_compile_args=["-O2"],
            optional=True,
        )
    ]
)
