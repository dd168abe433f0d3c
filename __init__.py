"""FloRec: federated recommendation on Flower.

The repository's top-level folders (``models/``, ``client/``, ``server/``, ``strategies/``,
``sim/``, ``recdata/``) are the subpackages ``florec.models``, ``florec.client``, ... once
installed (``pyproject.toml`` maps ``florec`` to the repository root), so FloRec never takes
top-level names such as ``models`` or ``client`` in a user's environment.
"""

__version__ = "0.1.0"
