"""A simulated upstream (Dext, InvoiceXT) whose practice changes over time."""
