"""What a run leaves on disk, and how it is known again: checkpoint reading and writing (``checkpoint_io``),
files that appear whole (``outputs``), the run folder's lock (``lock``) and identity (``folder``), the manifest of
what a run was made from (``manifest``, ``identity``, ``fingerprints``, ``seeds``), secrets kept out of files
(``secrets``), loggers, plots and the console."""
