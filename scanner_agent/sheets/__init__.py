"""The metadata-sheet adapters: a local CSV and the Google Sheet (gspread), with its cache."""
