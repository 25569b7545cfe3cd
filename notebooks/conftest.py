"""pytest configuration for the notebooks: nbval executes them in the fast ``ci`` profile.

The kernel nbval starts inherits this process's environment, so setting the variable here (before
collection starts any kernel) selects the profile of every notebook's ``parameters`` cell. An
explicit ``SPO_LAB_PROFILE`` in the environment wins.
"""

import os

os.environ.setdefault("SPO_LAB_PROFILE", "ci")
