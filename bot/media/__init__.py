"""The files people send, read for the model: photos, image files, PDFs and clips, each read in a confined child
process with a deadline and a memory limit, and the decoded images kept for follow-ups.

A new input kind (a format, a file type) is read here and reaches the engine as images."""
