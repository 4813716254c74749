from setuptools import find_packages, setup

setup(
    name="elspeth_beam",
    version="0.1.0",
    description="Auditable dataflow pipelines on Apache Beam with a SQL audit trail (the Landscape).",
    python_requires=">=3.11",
    packages=find_packages(include=["elspeth_beam", "elspeth_beam.*"]),
    package_data={"elspeth_beam": ["config/pipeline.schema.json"]},  # for editors: `elspeth-beam schema`
    install_requires=[
        "apache-beam==2.77.0",
        "pydantic>=2.7,<3",
        "SQLAlchemy>=2.0,<3",
        "pyarrow>=14,<26",
        "PyYAML>=6",
        "orjson>=3.8,<4",
    ],
    extras_require={"test": ["pytest>=8", "hypothesis>=6.100", "rfc8785>=0.1.4", "jsonschema>=4.18"], "postgres": ["psycopg[binary]>=3.1"]},
    entry_points={"console_scripts": ["elspeth-beam=elspeth_beam.cli:main"]},
)
