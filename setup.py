"""The one compiled piece: data/_jpeg_region.c, libjpeg-turbo decoding only a crop's region
(issue 36). Optional: without a C compiler or libjpeg-turbo's headers (Debian:
libjpeg62-turbo-dev) the install goes on without it and data/decode.py decodes with simplejpeg.
Everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "resnetlab.data._jpeg_region",
            ["src/resnetlab/data/_jpeg_region.c"],
            libraries=["jpeg"],
            optional=True,
        )
    ]
)
