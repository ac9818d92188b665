"""TRANSITION (issue 13): SessionDep lives in libs.db; removed with the llm's restructure."""

from libs.db import SessionDep as SessionDep
from libs.db import get_session as get_session
