"""Pure decisions with no I/O: scan states, the error tree, naming, barcode parsing, the sheet table,
the settle decision, the failure policy, rescans, the alert model, QC scores and the reconcile report."""
