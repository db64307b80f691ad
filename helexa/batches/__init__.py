"""The OpenAI Batch API's data: the formats of its files and objects (:mod:`.formats`) and where files and
batches are kept (:mod:`.store`). The gateway serves the API and runs the batches (``helexa.gateway.batch_*``)."""
