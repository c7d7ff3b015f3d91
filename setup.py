"""Packaging for File Conveyor (metadata lives here; pyproject.toml only names the build system)."""
from setuptools import find_packages, setup

setup(
    name="fileconveyor",
    version="1.0.0.dev0",
    description="Keeps CDNs, object stores and servers in sync with local directory trees",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Unlicense",
    python_requires=">=3.10",
    packages=find_packages(include=["fileconveyor", "fileconveyor.*"]),
    package_data={"fileconveyor": ["config.sample.xml", "config.rng"]},
    install_requires=[
        "lxml>=4.9",
        "pyinotify>=0.9.6; sys_platform == 'linux'",
        "pyasyncore>=1.0; sys_platform == 'linux' and python_version >= '3.12'",
        "macfsevents>=0.8; sys_platform == 'darwin'",
        # The metrics are always counted (pure Python, no dependencies); HTTP_ADDRESS serves them.
        "prometheus_client>=0.17",
    ],
    extras_require={
        "s3": ["boto3>=1.28"],
        "sftp": ["paramiko>=3.0"],
        "cloudfiles": ["python-swiftclient>=4.0"],
        "minify": ["rcssmin>=1.1", "rjsmin>=1.2"],
        "images": ["mozjpeg-lossless-optimization>=1.1", "pyoxipng>=9.0", "Pillow>=10.0"],
        "css": ["tinycss2>=1.2"],
        "precompress": ["brotli>=1.1"],
        "all": [
            "boto3>=1.28", "paramiko>=3.0", "python-swiftclient>=4.0",
            "rcssmin>=1.1", "rjsmin>=1.2", "tinycss2>=1.2",
            "mozjpeg-lossless-optimization>=1.1", "pyoxipng>=9.0", "Pillow>=10.0", "brotli>=1.1",
        ],
    },
    entry_points={"console_scripts": ["fileconveyor = fileconveyor.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Operating System :: POSIX :: Linux",
        "Operating System :: MacOS",
        "Environment :: No Input/Output (Daemon)",
    ],
)
