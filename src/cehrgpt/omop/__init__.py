"""OMOP CDM: the 5.4 specification, the one OMOP reader, and the restore job."""
