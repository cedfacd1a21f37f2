"""Latency: what a sync point costs on real GPUs, and what dropping it saves.

bench (the `bench` command under torchrun), timing (CUDA-graph timing, process exit), allreduce (the
all-reduce microbenchmark), schema (one JSON row format), peer (transformers' own tp_plan on the same
shapes), alphabeta + commcost (the all-reduce cost model), floorfit + predict (labelled predictions at
unmeasured TP degrees), report (the measured table), plots.

Imports: the core only. Nothing in the core imports this package.
"""
