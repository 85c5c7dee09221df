"""The attack stage: iterated directional ablation and the K=0 evaluation.

``reference`` is the plain one-candidate-at-a-time scoring (the ground truth); ``fast`` scores many
candidates per forward pass and must make the same choices.
"""
