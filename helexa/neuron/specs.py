"""A neuron's model specs: the catalogue (ids and aliases), what a load request may choose, and which harness
serves a model — everything about *what* to load, before anything is loaded. Pure but for ``auto``'s view of
the host (how many GPUs discovery found).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import msgspec

from helexa.config import ModelEntry
from helexa.engine.harness import Harness
from helexa.engine.plugins import resolve_harness
from helexa.errors import HelexaError, PreflightError
from helexa.neuron.harness_choice import choose_harness
from helexa.wire import reject_control_characters
from helexa.wire.neuron import AUTO_HARNESS, ModelSpec

__all__ = ["Specs"]


class Specs:
    """The catalogue and the harnesses of one neuron. ``gpus()``: NVIDIA GPUs the host has (for ``auto``)."""

    def __init__(
        self,
        models: Sequence[ModelEntry],
        harnesses: dict[str, Harness],
        harness_classes: dict[str, type[Harness]],
        *,
        default_harness: str,
        gpus: Callable[[], int],
    ) -> None:
        self.harnesses, self.harness_classes = harnesses, harness_classes
        self.default_harness, self.gpus = default_harness, gpus
        self.catalogue: dict[str, ModelEntry] = {}
        for entry in models:
            for name in (entry.id, *entry.aliases):
                self.catalogue[name] = entry
        self.auto_why: dict[str, str] = {}  # model id -> why "auto" chose its harness (for the load log)

    def spec_for(self, model_id: str) -> ModelSpec | None:
        """The catalogue's spec for ``model_id`` (an id or alias), or None if it is not in the catalogue."""
        entry = self.catalogue.get(model_id)
        return entry.spec() if entry is not None else None

    def complete(self, spec: ModelSpec) -> ModelSpec:
        """Fill what a load request left at its default from the catalogue (same id or alias), then the
        harness from the neuron's default. A field the request set (``normalise = false``) is kept."""
        fields = {f: getattr(spec, f) for f in ModelSpec.__struct_fields__}
        known = self.spec_for(spec.model_id)
        if known is not None:
            fields["model_id"] = known.model_id
            for field in msgspec.structs.fields(ModelSpec):
                default = field.default_factory() if field.default_factory is not msgspec.NODEFAULT else field.default
                if (
                    field.name != "model_id"
                    and fields[field.name] == default
                    and type(fields[field.name]) is type(default)
                ):
                    fields[field.name] = getattr(known, field.name)
        harness = fields["harness"] or self.default_harness
        if harness == AUTO_HARNESS:
            harness, why = self.auto_harness(fields["source"] or fields["model_id"], fields["quant"])
            self.auto_why[fields["model_id"]] = f"{harness or 'none'}, chosen by default_harness = auto: {why}"
        fields["harness"] = harness or AUTO_HARNESS  # none installed: refused when the harness is looked up
        return ModelSpec(**fields)

    def auto_harness(self, source: str, quant: str) -> tuple[str, str]:
        """``(harness, why)`` of ``default_harness = "auto"`` for ``source`` on this host."""
        return choose_harness(source, quant, gpus=self.gpus(), installed=self.harnesses)

    def from_request(self, spec: ModelSpec) -> ModelSpec:
        """A load request's spec, completed from the catalogue, with only what HTTP may choose.

        The request may pick among configured models and set the harness's ``load_options`` (context size,
        parallel slots, …), merged over the catalogue's options. Executables, arguments, environment and URLs
        come only from the neuron's configuration.

        :raises PreflightError: ``invalid_options`` naming the option (or ``source``) the request may not set.
        """
        reject_control_characters(spec, "harness", "source", "quant")
        known = self.spec_for(spec.model_id)
        completed = self.complete(msgspec.structs.replace(spec, options={}))
        harness = self.harness(completed.harness, completed.model_id)
        refused = sorted(set(spec.options) - harness.load_options)
        if refused:
            allowed = ", ".join(sorted(harness.load_options)) or "none"
            raise PreflightError(
                "invalid_options",
                completed.model_id,
                f"option {refused[0]!r} of harness {harness.name!r} can only be set in the neuron's configuration "
                "([[models]] options), not in a load request",
                f"a load request may set: {allowed}",
            )
        if not harness.request_source and spec.source and (known is None or spec.source != known.source):
            raise PreflightError(
                "invalid_options",
                completed.model_id,
                f"the source of a {harness.name!r} model can only come from the neuron's configuration",
                "add the model to the neuron's [[models]] and load it by id",
            )
        return msgspec.structs.replace(completed, options={**completed.options, **spec.options})

    def harness(self, name: str, model_id: str = "") -> Harness:
        """The harness instance called ``name``. :raises PreflightError: ``harness_not_installed``."""
        try:
            cls = resolve_harness(self.harness_classes, name, wanted_by=f"model {model_id!r}")
        except HelexaError as exc:
            raise PreflightError("harness_not_installed", model_id, exc.message, "install the harness plugin") from None
        return self.harnesses[cls.name]
