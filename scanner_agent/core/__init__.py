"""Pure decisions with no I/O: states, naming, barcode parsing, the sheet table, settle, failure policy, errors."""
