"""Run tracking around Sacred: MongoDB addresses (``mongo``), the observers
(``observer``), run folders in the file-observer layout (``rundir``), uploading them
(``upload``), resuming from a stored run (``remote``) and the table of runs (``report``)."""
