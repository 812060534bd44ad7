"""Generators of stand-in datasets for machines without the published files.

Everything here produces *generated* data (an MPC demonstrator, a BC policy, a
noisy waypoint controller). It mimics the layout and the spirit of the AWAC and
D4RL datasets; it is not those datasets and its scores are not comparable.
"""
