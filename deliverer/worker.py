"""Worker and beat entry point: ``celery -A deliverer.worker worker`` / ``beat``.

Tasks open their own database sessions and need no Flask application context, so
workers do not build the web app.
"""

from deliverer.celery_app import make_celery

celery_app = make_celery()
app = celery_app
