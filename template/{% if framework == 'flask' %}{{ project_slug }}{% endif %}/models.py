from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Mapped, mapped_column

db = SQLAlchemy()


class Counter(db.Model):
    """A named counter, such as the home page's visit count."""

    __tablename__ = "counter"

    name: Mapped[str] = mapped_column(primary_key=True)
    value: Mapped[int] = mapped_column(default=0)

    @classmethod
    def increment(cls, name: str) -> int:
        """Add one to the counter and return the new value, in one atomic statement."""
        statement = (
            pg_insert(cls)
            .values(name=name, value=1)
            .on_conflict_do_update(index_elements=[cls.name], set_={"value": cls.value + 1})
            .returning(cls.value)
        )
        value = db.session.execute(statement).scalar_one()
        db.session.commit()
        return value
