"""A question put to the engine and its answer given: the record of answers in progress (the one hand on each
answer's life), the question's material, and the stream of engine events that becomes the reply."""
