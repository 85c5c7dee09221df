"""The attack stage: iterated directional ablation and the K=0 evaluation.

Layout: ``candidates`` (candidate layers, extraction, the selection rule), ``scoring`` (the
``Scorer`` interface: ``reference`` scores one candidate at a time and is the ground truth,
``fast`` scores many per forward pass and must make the same choices), ``behaviour`` (replies →
refused / complied / degenerate), ``iterated`` (the loop), ``run`` (one model, with its source
baseline and verdict), ``taskgroup`` (every model of a study on Ray).
"""
