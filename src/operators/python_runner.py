"""rhaiflow's PythonOperator runner: calls one Python function as Airflow's PythonOperator does.

Run as `python RUNNER WORKDIR` by rhaiflow's task supervisor (stdout and stderr go to the task log).
WORKDIR holds `payload.json` (read, then deleted: it may hold secrets) and `result.jsonl`, where
this runner writes one JSON object a line, each flushed at once:
  {"started": true}                         the interpreter runs this file
  {"push": KEY, "value": VALUE}             ti.xcom_push(KEY, VALUE)
  {"end": "success", "value": VALUE|null}   the function returned (null: None)
  {"end": "error", "message": TEXT}         why the try failed (the traceback is in the log)
print() cannot reach that file: it is opened here and named nowhere else.
"""

import datetime
import importlib
import inspect
import json
import os
import sys
import traceback
import types


class _Results:
    def __init__(self, path):
        self._file = open(path, "a", encoding="utf-8")

    def emit(self, obj):
        self._file.write(json.dumps(obj, allow_nan=False) + "\n")
        self._file.flush()


def _encode(value, what, max_bytes):
    """`value` as JSON text, or a TypeError/ValueError naming `what`."""
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise TypeError(
            "%s is not JSON-serialisable (%s: %s); return plain data: dict, list, str, int, float, bool or None"
            % (what, type(e).__name__, e)
        ) from None
    size = len(text.encode("utf-8"))
    if size > max_bytes:
        raise ValueError("%s is %d bytes as JSON, more than `[core] max_xcom_bytes` (%d)" % (what, size, max_bytes))
    return text


class TaskInstance:
    """The part of Airflow's `ti` a ported task uses: ids, try_number, xcom_pull and xcom_push.

    xcom_pull reads the XComs of this DAG run that rhaiflow loaded before the try started (the
    run's other tasks, newest last) and what this try pushed.
    """

    def __init__(self, fields, xcoms, results, max_xcom_bytes):
        self.dag_id = fields.get("dag_id")
        self.task_id = fields.get("task_id")
        self.run_id = fields.get("run_id")
        self.try_number = fields.get("try_number")
        self.max_tries = fields.get("max_tries")
        self.map_index = -1
        self._xcoms = [(x[0], x[1], x[2]) for x in xcoms]
        self._results = results
        self._max = max_xcom_bytes

    def xcom_push(self, key, value, **_ignored):
        if not isinstance(key, str) or not key:
            raise ValueError("xcom_push: the key must be a non-empty string, not %r" % (key,))
        text = _encode(value, "the XCom `%s`" % key, self._max)
        self._results.emit({"push": key, "value": json.loads(text)})
        self._xcoms = [x for x in self._xcoms if not (x[0] == self.task_id and x[1] == key)]
        self._xcoms.append((self.task_id, key, json.loads(text)))

    def xcom_pull(self, task_ids=None, dag_id=None, key="return_value", include_prior_dates=False, **_ignored):
        if dag_id is not None and dag_id != self.dag_id:
            raise ValueError("xcom_pull: rhaiflow reads XComs of this DAG run only, not of DAG `%s`" % dag_id)
        if include_prior_dates:
            raise ValueError("xcom_pull: include_prior_dates is not supported by rhaiflow")

        def find(task_id):
            for t, k, v in reversed(self._xcoms):
                if (task_id is None or t == task_id) and k == key:
                    return True, v
            return False, None

        if task_ids is None or isinstance(task_ids, str):
            return find(task_ids)[1]
        found = [find(t) for t in task_ids]
        return [v for ok, v in found if ok]

    def __repr__(self):
        return "<TaskInstance: %s.%s %s [running]>" % (self.dag_id, self.task_id, self.run_id)


def _date(text):
    if not isinstance(text, str):
        return text
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return text


def _context(payload, results):
    ctx = dict(payload.get("context") or {})
    for name in ("logical_date", "execution_date", "data_interval_start", "data_interval_end"):
        if name in ctx:
            ctx[name] = _date(ctx[name])
    run = dict(ctx.get("dag_run") or {})
    for name in ("logical_date", "execution_date", "data_interval_start", "data_interval_end"):
        if name in run:
            run[name] = _date(run[name])
    ctx["dag_run"] = types.SimpleNamespace(**run)
    ti = TaskInstance(ctx.get("ti") or {}, payload.get("xcoms") or [], results, payload["max_xcom_bytes"])
    ctx["ti"] = ti
    ctx["task_instance"] = ti
    ctx["templates_dict"] = payload.get("templates_dict")
    return ctx


def select_kwargs(fn, args, context):
    """Airflow's `KeywordParameters.determine`: the context names the function's signature asks for,
    or all of them when it takes `**kwargs`; parameters filled by positional `args` are left out."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return dict(context)
    params = list(signature.parameters.values())
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return dict(context)
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    filled = {p.name for p in positional[: len(args)]}
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - filled
    return {k: v for k, v in context.items() if k in names}


def main():
    work = sys.argv[1]
    # One pipe for both, so a traceback lands after the lines printed before it.
    sys.stderr.flush()
    os.dup2(sys.stdout.fileno(), sys.stderr.fileno())
    results = _Results(os.path.join(work, "result.jsonl"))
    results.emit({"started": True})
    payload_path = os.path.join(work, "payload.json")
    with open(payload_path, encoding="utf-8") as f:
        payload = json.load(f)
    try:
        os.unlink(payload_path)
    except OSError:
        pass
    for line in payload.get("notes") or []:
        print(line, flush=True)
    # As Airflow puts the dags folder on sys.path: the DAG file's folder first (instead of this
    # file's), then the dags folder when the DAG file is in a subfolder of it.
    sys.path[0] = payload["dag_folder"]
    if payload.get("dags_folder") and payload["dags_folder"] != payload["dag_folder"]:
        sys.path.insert(1, payload["dags_folder"])
    module_name, function_path = payload["callable"].split(":", 1)
    callable_name = payload["callable"]
    try:
        module = importlib.import_module(module_name)
    except BaseException as e:
        traceback.print_exc()
        return _fail(
            results, "cannot import module `%s` of `%s`: %s: %s" % (module_name, callable_name, type(e).__name__, e)
        )
    fn = module
    try:
        for part in function_path.split("."):
            fn = getattr(fn, part)
    except AttributeError as e:
        return _fail(results, "module `%s` has no callable `%s` (%s)" % (module_name, function_path, e))
    if not callable(fn):
        return _fail(results, "`%s` is not callable" % callable_name)
    args = payload.get("args") or []
    context = _context(payload, results)
    context.update(payload.get("kwargs") or {})
    kwargs = select_kwargs(fn, args, context)
    try:
        value = fn(*args, **kwargs)
    except SystemExit as e:
        if e.code is None or e.code == 0:
            print("Done. The callable exited with sys.exit(%s); no return value" % (e.code,), flush=True)
            results.emit({"end": "success", "value": None})
            return 0
        traceback.print_exc()
        code = e.code if isinstance(e.code, int) else 1
        return _fail(results, "`%s` exited with sys.exit(%r)" % (callable_name, e.code), code)
    except BaseException as e:
        # The traceback from the callable's frame on: this runner's frame is noise.
        traceback.print_exception(type(e), e, e.__traceback__.tb_next)
        return _fail(results, "`%s` raised %s: %s" % (callable_name, type(e).__name__, e))
    if value is None:
        print("Done. Returned value was: None", flush=True)
        results.emit({"end": "success", "value": None})
        return 0
    try:
        text = _encode(value, "the return value of `%s` (a %s)" % (callable_name, type(value).__name__),
                       payload["max_xcom_bytes"])
    except (TypeError, ValueError) as e:
        return _fail(results, str(e))
    if payload.get("show_return_value_in_logs", True):
        shown = text if len(text) <= 1000 else text[:1000] + " …"
        print("Done. Returned value was: %s" % shown, flush=True)
    else:
        print("Done. Returned value not shown", flush=True)
    results.emit({"end": "success", "value": json.loads(text)})
    return 0


def _fail(results, message, code=1):
    sys.stderr.flush()
    if len(message) > 4000:
        message = message[:4000] + " …"
    results.emit({"end": "error", "message": message})
    return code


if __name__ == "__main__":
    sys.exit(main())
