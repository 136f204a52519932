"""Training EDN: the trainer behind ``training/*.py``, its data, hint sampling and losses, and the trained model's
card and Hub export.

Only :mod:`.trainer` and :mod:`.data` need the train extra (datasets, peft, tensorboard); this file imports
nothing, so that ``edn export-hub`` renders a card on the colourising install too.
"""
