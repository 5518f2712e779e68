"""mmgate's two native parts: the framer's text reader
(mmgate/smtp/_text.c) and the Mailman spool writer's file system half
(mmgate/mailman/_spoolio.c). Both optional: where no C compiler or Python
headers are found, mmgate installs without them and does the same work in
Python (mmgate/smtp/framing.py, mmgate/mailman/spool.py), with the same
results, slower."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "mmgate.smtp._text",
            ["mmgate/smtp/_text.c"],
            extra_compile_args=["-O2"],
            optional=True,
        ),
        Extension(
            "mmgate.mailman._spoolio",
            ["mmgate/mailman/_spoolio.c"],
            extra_compile_args=["-O2"],
            optional=True,
        ),
    ]
)
