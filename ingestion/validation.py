"""The corpus expectation suite (Great Expectations 1.x), run on every batch before it is committed.

The record rules are already enforced by the screening code; the suite is the independent
second line: it states what a corpus batch must look like, checks it with a different
implementation, and stops a batch from reaching the table if the two ever disagree (a bug,
or a rule changed in one place only). The context is ephemeral, in memory, with analytics and
progress bars off, and is built once per ingest run; ``great_expectations`` is imported lazily
because importing it costs seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

#: Columns handed to the suite; the rest of a batch is not checked by it.
VALIDATED_COLUMNS = ("record_id", "text", "source_row")


@dataclass(frozen=True)
class BatchVerdict:
    success: bool
    failed_expectations: list[str]


class CorpusSuite:
    """Validates accepted batches against the corpus expectations."""

    def __init__(self, max_text_chars: int) -> None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import (
            DataContextConfig,
            InMemoryStoreBackendDefaults,
            ProgressBarsConfig,
        )

        config = DataContextConfig(
            analytics_enabled=False,
            store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
            progress_bars=ProgressBarsConfig(globally=False),
        )
        self._context = gx.get_context(mode="ephemeral", project_config=config)
        source = self._context.data_sources.add_pandas("ingest")
        asset = source.add_dataframe_asset("accepted_batch")
        self._batches = asset.add_batch_definition_whole_dataframe("whole_batch")
        self._suite = self._context.suites.add(gx.ExpectationSuite(name="corpus_batch"))
        ex = gx.expectations
        for expectation in (
            ex.ExpectColumnValuesToNotBeNull(
                column="record_id", description="record_id is present"
            ),
            ex.ExpectColumnValuesToBeUnique(column="record_id", description="record_id is unique"),
            ex.ExpectColumnValuesToMatchRegex(
                column="record_id",
                regex=r"^[0-9a-f]{64}$",
                description="record_id is a sha256 hex digest",
            ),
            ex.ExpectColumnValuesToNotBeNull(column="text", description="text is present"),
            ex.ExpectColumnValueLengthsToBeBetween(
                column="text",
                min_value=1,
                max_value=max_text_chars,
                description=f"text has 1..{max_text_chars} characters",
            ),
            ex.ExpectColumnValuesToNotMatchRegex(
                column="text", regex="\r", description="text has normalised line endings"
            ),
            ex.ExpectColumnValuesToBeBetween(
                column="source_row", min_value=1, description="source_row is a 1-based position"
            ),
        ):
            self._suite.add_expectation(expectation)
        # a validation definition fetches the batch once (Batch.validate fetches it twice, and
        # each fetch hashes the whole frame)
        self._definition = self._context.validation_definitions.add(
            gx.ValidationDefinition(name="corpus_batch", data=self._batches, suite=self._suite)
        )

    def validate(self, batch: pa.Table) -> BatchVerdict:
        # object strings on purpose: for Arrow-backed strings GX's regex checks call
        # astype(str), a fixed-width numpy array of rows x longest text x 4 bytes
        frame = batch.select(list(VALIDATED_COLUMNS)).to_pandas()
        result = self._definition.run(
            batch_parameters={"dataframe": frame}, result_format="BOOLEAN_ONLY"
        )
        failed = [
            r.expectation_config.description or r.expectation_config.type
            for r in result.results
            if not r.success
        ]
        return BatchVerdict(success=bool(result.success), failed_expectations=failed)
