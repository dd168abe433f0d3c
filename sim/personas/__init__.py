"""Persona users that test any FloRec recommender (UXAgent-style), behind ``florec simulate``.

:mod:`~florec.sim.personas.persona` samples and writes personas, :mod:`~.memory` is their
memory stream, :mod:`~.agent` their prompts, :mod:`~.session` the session loop,
:mod:`~.recommender` loads a trained run (and the control rankers), :mod:`~.policy` is the
scripted persona of known preference, :mod:`~.output` writes RecBole files and the report, and
:mod:`~.run` ties them together. See docs/methods/personas.md.
"""
