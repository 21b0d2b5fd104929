"""MongoDB: Beanie's initialisation, with index creation that FerretDB survives."""

from __future__ import annotations

from typing import Any

from beanie import Document, init_beanie
from beanie.odm.fields import IndexModelField
from beanie.odm.utils.pydantic import get_model_fields
from beanie.odm.utils.typing import get_index_attributes
from pymongo import IndexModel
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from tidings.documents import ALL_DOCUMENTS


def index_models(model: type[Document]) -> list[IndexModel]:
    """The indexes Beanie would create for `model`: Indexed() fields plus Settings.indexes."""
    fields: list[IndexModelField] = []
    for name, field in get_model_fields(model).items():  # type: ignore[no-untyped-call]
        attributes = get_index_attributes(field)
        if attributes is not None:
            fields.append(IndexModelField(IndexModel([(field.alias or name, attributes[0])], **attributes[1])))
    settings_indexes = model.get_settings().indexes
    if settings_indexes:
        fields = IndexModelField.merge_indexes(fields, settings_indexes)
    models: list[IndexModel] = IndexModelField.list_to_index_model(fields)
    return models


async def init_database(database: AsyncDatabase[Any]) -> None:
    """Bind the documents to `database` and create the indexes that are missing.

    Beanie re-sends every index on each start, which MongoDB ignores but FerretDB 1.24 answers by dropping the
    connection when two or more already exist; so only the missing ones are created, one at a time.
    """
    await init_beanie(database=database, document_models=ALL_DOCUMENTS, skip_indexes=True)
    for model in ALL_DOCUMENTS:
        collection = model.get_pymongo_collection()
        existing = await collection.index_information()
        for index in index_models(model):
            # One per call: when two processes start together, a call whose indexes all exist by then is safe
            # only if it holds a single index.
            if index.document["name"] not in existing:
                await collection.create_indexes([index])


async def upsert(collection: AsyncCollection[Any], document_id: Any, update: dict[str, Any]) -> None:
    """Update one document by `_id`, making it if missing. Two upserts of a missing document at once can both
    insert, and one fails with a duplicate key (on MongoDB too); by then the document exists, so it is updated."""
    try:
        await collection.update_one({"_id": document_id}, update, upsert=True)
    except DuplicateKeyError:
        await collection.update_one({"_id": document_id}, update)
