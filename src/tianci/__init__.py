"""tianci (填词): train small GPTs on Song ci and compose ci to a chosen tune.

`import tianci` is cheap and never imports torch: the counting model, the corpus tools and
the CLI's help work without it. Import the torch parts explicitly (`tianci.model`, ...).
"""

__version__ = "0.1.0"

from .errors import TianciError  # noqa: E402,F401
