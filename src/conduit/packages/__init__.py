"""Conduit's own packages, served beside the upstreams: the workspace (:mod:`.workspace`) and saved skills
(:mod:`.skills`, their definitions in :mod:`.skill_definition`). What the gateway knows of a package is
:mod:`conduit.core.packages`; these are built by :mod:`conduit.assembly` and handed to it."""
