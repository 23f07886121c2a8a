"""The files people send, read for the model: photos, image files, PDFs and clips, each read in a confined child
process with a deadline and a memory limit; the decoded images kept for follow-ups; and how the model, the status
and the answer speak of what a question shows (material.py).

A new input kind (a format, a file type) is read here and reaches the engine as images."""
