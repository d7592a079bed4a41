"""What outlives a run, explicitly and per principal: the state database (:mod:`.database`), its tables and
migrations (:mod:`.tables`, ``migrations/``), each principal's workspace files (:mod:`.workspace`) and saved
skills (:mod:`.skills`). Programs reach it only through the host: Conduit's own packages
(:mod:`conduit.packages`)."""
