"""The `clrepro` MLflow app (`mlflow ui --app-name clrepro`, what `clrepro ui` runs): MLflow's own server whose
UI opens experiments on their training runs.

MLflow 3.17's UI chooses between its GenAI pages (traces, sessions, judges) and its "Model training" pages (runs,
models) with a switch at the top of its sidebar. The choice lives in the browser (localStorage key
`mlflow.workflowType_v1`, default "genai"), or in a page's `?workflowType=` query; no experiment tag or
server setting decides it. This app serves MLflow's page with a one-line script that makes "Model training"
the default where the browser has no choice stored yet; the switch keeps working, and a choice made with it
is kept.
"""

from __future__ import annotations

WORKFLOW_KEY = "mlflow.workflowType_v1"  # MLflow's useLocalStorage key ("<key>_v<version>")
MACHINE_LEARNING = "machine_learning"
SCRIPT = ('<script>try{if(!window.localStorage.getItem("%s"))window.localStorage.setItem("%s",'
          'JSON.stringify("%s"))}catch(e){}</script>' % (WORKFLOW_KEY, WORKFLOW_KEY, MACHINE_LEARNING))


def runs_url(base: str, experiment_id: str) -> str:
    """A link that opens an experiment on its runs, in any browser, with any MLflow 3 server."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType={MACHINE_LEARNING}"


def _index_with_default(flask_app):
    """MLflow's index.html with SCRIPT first in <head>, so it runs before the UI's bundle reads the setting."""
    import os

    from flask import Response

    path = os.path.join(flask_app.static_folder, "index.html")
    with open(path, encoding="utf-8") as f:
        html = f.read()
    html = html.replace("<head>", "<head>" + SCRIPT, 1) if "<head>" in html else SCRIPT + html
    return Response(html, mimetype="text/html", headers={"Cache-Control": "no-cache"})


def create_app():
    """The app factory MLflow's server calls (entry point `mlflow.app: clrepro`)."""
    from mlflow.environment_variables import _MLFLOW_SGI_NAME
    from mlflow.server import app

    if "serve" in app.view_functions:
        app.view_functions["serve"] = lambda: _index_with_default(app)
    if _MLFLOW_SGI_NAME.get() == "uvicorn":
        from mlflow.server.fastapi_app import create_fastapi_app

        return create_fastapi_app(app)
    return app
