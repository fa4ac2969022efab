"""`{job_id:job_id}`: the converter of a job id in a route's path (pages, the API, the push endpoints).

Starlette's `int` converter calls `int()` on any run of digits, and Python refuses to convert text of more
than 4,300 digits (ValueError): raised while routing, that was a 500 and a traceback in the log, before
any authentication on the push endpoints. Here such a number is simply no job: one past BIGINT, which
`views.job` answers 404 and no push token grants.
"""

from __future__ import annotations

from starlette.convertors import Convertor, register_url_convertor

from ..validation import JOB_ID_MAX

NAME = "job_id"
JOB = "{job_id:job_id}"
"""The path parameter of a job id: `Route(f"/jobs/{JOB}", ...)`."""


class JobIdConvertor(Convertor[int]):
    regex = "[0-9]+"

    def convert(self, value: str) -> int:
        try:
            return int(value)
        except ValueError:  # past sys.get_int_max_str_digits()
            return JOB_ID_MAX + 1

    def to_string(self, value: int) -> str:
        return str(int(value))


register_url_convertor(NAME, JobIdConvertor())
