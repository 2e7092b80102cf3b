"""The ONNX Runtime device loop: the fused step graph on OrtValues that live on the device.

Per batch bucket, every tensor is an OrtValue allocated once on the device: two latents used in turn
(step i reads ``latents[i % 2]`` and writes the other), likewise two x̂_0 histories (multistep solvers),
the condition and guidance, and per step its own timestep vector, solver coefficients
``(A, B, σ, P, Q, C1, C2)`` and (eta > 0) step noise. Step i has its own IOBinding
over these fixed addresses, so with ``enable_cuda_graph`` ONNX Runtime captures each step once (graph
id i + 1; id 0 is reserved) and replays it for every later batch. The per-step constants are uploaded
once per bucket; per batch only the initial noise, the conditions and the step noise go in, and the
decoder outputs come out after the last run. Runs do not synchronise with the host except the last.

The same code runs with ``device="cpu"`` OrtValues (tests check it against the host loop).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from histosmith.runtime.planning import StepTables, pad_rows
from histosmith.runtime.schedule import SamplerTables
from histosmith.runtime.specs import (
    CONDITION,
    GUIDANCE,
    LATENT,
    NEXT_LATENT,
    NEXT_X0_HISTORY,
    STEP_COEFS,
    STEP_NOISE,
    TIMESTEP,
    X0_HISTORY,
    GraphSpec,
    step_coef_count,
)

GRAPH_ID = "gpu_graph_id"  # RunOptions key of ONNX Runtime's CUDA-graph annotation
NO_SYNC = "disable_synchronize_execution_providers"


def device_value(shape: tuple[int, ...], device: str, device_id: int) -> ort.OrtValue:
    return ort.OrtValue.ortvalue_from_shape_and_type(list(shape), np.float32, device, device_id)


@dataclass
class _Bucket:
    latents: tuple[ort.OrtValue, ort.OrtValue]
    histories: tuple[ort.OrtValue, ...]  # two in turn where the step graph carries an x̂_0 history, else none
    condition: ort.OrtValue
    guidance: ort.OrtValue
    noise: list[ort.OrtValue]  # S values with eta > 0, else one zero-filled value shared by every step
    constants: list[tuple[ort.OrtValue, ort.OrtValue]]  # per step: timestep vector, coefficients
    outputs: dict[str, ort.OrtValue]
    steps: list[ort.IOBinding]
    decoder: ort.IOBinding


class DeviceLoop:
    """S fused steps and the decoder on device-resident OrtValues, one IOBinding (and CUDA graph) per step."""

    def __init__(self, step: ort.InferenceSession, decoder: ort.InferenceSession, step_spec: GraphSpec,
                 decoder_spec: GraphSpec, tables: SamplerTables, device: str, device_id: int = 0,
                 cuda_graph: bool = False):
        self.step, self.decoder = step, decoder
        self.step_spec, self.decoder_spec, self.tables = step_spec, decoder_spec, tables
        self.device, self.device_id, self.cuda_graph = device, device_id, cuda_graph
        s = tables.num_steps
        self.run_options = [self._options(i + 1, last=False) for i in range(s)]
        self.decoder_options = self._options(s + 1, last=True)
        self._buckets: dict[int, _Bucket] = {}

    def _options(self, graph_id: int, last: bool) -> ort.RunOptions:
        opts = ort.RunOptions()
        if self.cuda_graph:
            opts.add_run_config_entry(GRAPH_ID, str(graph_id))
        if not last:  # no host synchronisation between steps: they queue on the provider's stream
            opts.add_run_config_entry(NO_SYNC, "1")
        return opts

    def _value(self, shape: tuple[int, ...]) -> ort.OrtValue:
        return device_value(shape, self.device, self.device_id)

    def _upload(self, value: ort.OrtValue, array: np.ndarray) -> None:
        value.update_inplace(np.ascontiguousarray(array, dtype=np.float32))

    def _allocate(self, batch: int) -> _Bucket:
        shapes = self.step_spec.input_shapes(batch)
        tables = StepTables.build(self.tables, batch, step_coef_count(self.step_spec))
        s = self.tables.num_steps
        has_history = X0_HISTORY in shapes
        bucket = _Bucket(
            latents=(self._value(shapes[LATENT]), self._value(shapes[LATENT])),
            histories=tuple(self._value(shapes[X0_HISTORY]) for _ in range(2 if has_history else 0)),
            condition=self._value(shapes[CONDITION]),
            guidance=self._value(shapes[GUIDANCE]),
            noise=[self._value(shapes[STEP_NOISE]) for _ in range(s if self.tables.stochastic else 1)],
            constants=[(self._value(shapes[TIMESTEP]), self._value(shapes[STEP_COEFS])) for _ in range(s)],
            outputs={name: self._value(shape) for name, shape in self.decoder_spec.output_shapes(batch).items()},
            steps=[], decoder=self.decoder.io_binding(),
        )
        for i, (timestep, coefs) in enumerate(bucket.constants):  # constant for the life of the bucket
            self._upload(timestep, tables.timesteps[i])
            self._upload(coefs, tables.coefs[i])
        if not self.tables.stochastic:
            self._upload(bucket.noise[0], np.zeros(shapes[STEP_NOISE], np.float32))
        for value in bucket.histories:  # the first steps read it with zero coefficients: keep it finite
            self._upload(value, np.zeros(shapes[X0_HISTORY], np.float32))
        for i in range(s):
            binding = self.step.io_binding()
            noise = bucket.noise[i if self.tables.stochastic else 0]
            inputs = {LATENT: bucket.latents[i % 2], TIMESTEP: bucket.constants[i][0], CONDITION: bucket.condition,
                      GUIDANCE: bucket.guidance, STEP_COEFS: bucket.constants[i][1], STEP_NOISE: noise}
            if has_history:
                inputs[X0_HISTORY] = bucket.histories[i % 2]
                binding.bind_ortvalue_output(NEXT_X0_HISTORY, bucket.histories[(i + 1) % 2])
            for name in self.step_spec.input_names:
                binding.bind_ortvalue_input(name, inputs[name])
            binding.bind_ortvalue_output(NEXT_LATENT, bucket.latents[(i + 1) % 2])
            bucket.steps.append(binding)
        bucket.decoder.bind_ortvalue_input(LATENT, bucket.latents[s % 2])
        for name, value in bucket.outputs.items():
            bucket.decoder.bind_ortvalue_output(name, value)
        return bucket

    def bucket(self, batch: int) -> _Bucket:
        if batch not in self._buckets:
            self._buckets[batch] = self._allocate(batch)
        return self._buckets[batch]

    def run(self, latents: np.ndarray, conditions: np.ndarray, guidance: np.ndarray,
            step_noise: np.ndarray | None, batch: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """One batch padded to ``batch`` rows: (decoder outputs, final latent), the first ``n`` rows each."""
        n = len(latents)
        b = self.bucket(batch)
        self._upload(b.latents[0], pad_rows(latents.astype(np.float32), batch))
        self._upload(b.condition, pad_rows(conditions.astype(np.float32), batch))
        self._upload(b.guidance, pad_rows(guidance.astype(np.float32), batch, 1.0))
        if self.tables.stochastic and step_noise is not None:
            for value, rows in zip(b.noise, step_noise, strict=True):
                self._upload(value, pad_rows(rows.astype(np.float32), batch))
        for binding, opts in zip(b.steps, self.run_options, strict=True):
            self.step.run_with_iobinding(binding, opts)
        self.decoder.run_with_iobinding(b.decoder, self.decoder_options)  # synchronises: results out
        outputs = {name: value.numpy()[:n] for name, value in b.outputs.items()}
        return outputs, b.latents[self.tables.num_steps % 2].numpy()[:n]

    def close(self) -> None:
        self._buckets.clear()
