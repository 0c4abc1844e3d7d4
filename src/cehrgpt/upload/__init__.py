"""Upload restored OMOP CDM tables to SQL Server, PostgreSQL, MariaDB, DuckDB, SQLite or any SQLAlchemy database."""

from cehrgpt.upload.errors import UploadError
from cehrgpt.upload.upload import upload_omop

__all__ = ["UploadError", "upload_omop"]
