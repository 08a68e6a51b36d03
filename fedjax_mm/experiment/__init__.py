"""The experiments' library: what ``experiments/*.py`` share, importable and tested.

* ``methods``: the one table of named methods (config overrides, tuned axes);
* ``overrides``: ``key=value`` strings and method tables onto a config (ml_collections);
* ``labels``: a run's label read off its config through the registries;
* ``references``: the floor (untrained model) and the centralized references;
* ``plots``: the demos' accuracy-vs-round plot;
* ``workdirs``, ``comparison``, ``compare_report``: the comparison's resumable,
  shared runs and its report; ``tuning`` (widened log grids), ``protocol``
  (selection / report seeds, validation / test clients), ``statistics``.
"""

from fedjax_mm.experiment.labels import data_label, method_label
from fedjax_mm.experiment.methods import ABLATIONS, COMPARED, METHODS, Method, parse_methods
from fedjax_mm.experiment.overrides import OverrideError
