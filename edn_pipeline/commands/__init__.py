"""The ``edn`` command line (:mod:`.edn_cli`): a module per command, and :mod:`.common` for what they share."""
