"""Workload statistics the cost model needs, computed once per plan."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .architecture import Architecture
from .workload import LengthDistribution, Workload


def decode_steps(output_length: float, encoder_decoder: bool) -> float:
    """Decode iterations a query of ``output_length`` tokens needs.

    A decoder-only model emits its first token at the end of the prefill (encoding),
    so it decodes ``o - 1`` more; an encoder-decoder model decodes all ``o``.
    """
    return output_length if encoder_decoder else max(output_length - 1.0, 0.0)


def _steps_pmf(output: LengthDistribution, encoder_decoder: bool) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.arange(1, output.max + 1, dtype=np.float64)
    steps = lengths if encoder_decoder else lengths - 1.0
    return steps, output.pmf


@dataclass(frozen=True)
class Moments:
    """Expected values over a workload, for one model family.

    ``mean_context`` is the KV context a decoding query sees on average over its
    decode iterations (length-biased: long outputs spend more iterations in the batch),
    the quantity that sets the steady decode batch's attention cost and KV memory.
    """

    mean_input: float
    mean_output: float
    output_p99: int
    max_input: int
    max_output: int
    mean_steps: float
    steps_p99: float
    mean_context: float
    std_context: float
    encoder_decoder: bool
    output: LengthDistribution
    input: LengthDistribution

    @classmethod
    def of(cls, workload: Workload, architecture: Architecture) -> Moments:
        ed = architecture.encoder_decoder
        inp, out = workload.input, workload.output
        steps, p = _steps_pmf(out, ed)
        e_d = float(np.dot(steps, p))
        e_d2 = float(np.dot(steps * steps, p))
        e_d3 = float(np.dot(steps**3, p))
        # Cross moments of input i and decode steps d (d = o, or o - 1 for decoder-only
        # models), with the workload's input-output dependence (trace pairs or copula).
        e_io, e_i2o, e_io2 = (
            workload.cross_moment(1, 1),
            workload.cross_moment(2, 1),
            workload.cross_moment(1, 2),
        )
        if ed:
            e_id, e_i2d, e_id2 = e_io, e_i2o, e_io2
        else:
            e_i, e_i2 = inp.mean, inp.moment(2)
            e_id = e_io - e_i
            e_i2d = e_i2o - e_i2
            e_id2 = e_io2 - 2.0 * e_io + e_i
        # Context at decode step k (1-based) of a query with input i: i + k (the tokens
        # cached before this step's token). Length-biased mean over all decode steps:
        #   sum_k (i + k) = i*d + d(d+1)/2  ;  sum_k (i+k)^2 = i^2 d + i d(d+1) + d(d+1)(2d+1)/6
        if e_d <= 0:
            mean_ctx, std_ctx = inp.mean, inp.std
        else:
            s1 = e_id + (e_d2 + e_d) / 2.0
            s2 = e_i2d + e_id2 + e_id + (2 * e_d3 + 3 * e_d2 + e_d) / 6.0
            mean_ctx = s1 / e_d
            std_ctx = math.sqrt(max(s2 / e_d - mean_ctx**2, 0.0))
        p99 = out.percentile(99)
        return cls(
            mean_input=inp.mean,
            mean_output=out.mean,
            output_p99=p99,
            max_input=inp.max,
            max_output=out.max,
            mean_steps=e_d,
            steps_p99=decode_steps(float(p99), ed),
            mean_context=mean_ctx,
            std_context=std_ctx,
            encoder_decoder=ed,
            output=out,
            input=inp,
        )

    def expected_max_steps(self, n: int) -> float:
        """E[max decode steps over n queries]: how long a static batch of n decodes."""
        return decode_steps(self.output.expected_max(max(n, 1)), self.encoder_decoder)
