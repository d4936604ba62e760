"""The bad-input corpus: broken files, hostile sheet cells, odd barcodes, links and undecodable names."""
