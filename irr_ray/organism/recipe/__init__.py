"""How the organism is trained: the corpus (``corpus``) and the two training stages (``train``)."""
